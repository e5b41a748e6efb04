<?php

namespace App\Console\Commands;

use App\Models\Tenant;
use App\Tenancy\Tenancy;
use Illuminate\Console\Command;

class TenantList extends Command
{
    protected $signature = 'tenant:list {--json : one JSON array}';

    protected $description = 'List tenants';

    public function handle(Tenancy $tenancy): int
    {
        $tenancy->ensureCentralSchema();
        $rows = Tenant::orderBy('name')->get(['id', 'name', 'database', 'created_at'])
            ->map(fn ($t) => ['id' => $t->id, 'name' => $t->name, 'database' => $t->database,
                'created_at' => $t->created_at->toIso8601String()])->all();
        if ($this->option('json')) {
            $this->line(json_encode($rows));
        } else {
            $this->table(['id', 'name', 'database', 'created_at'], $rows);
        }

        return 0;
    }
}
