<?php

namespace App\Console\Commands;

use App\Models\Tenant;
use App\Tenancy\Tenancy;
use Illuminate\Console\Command;

class TenantMigrate extends Command
{
    protected $signature = 'tenant:migrate {name? : one tenant; default all}';

    protected $description = 'Run database/migrations/tenant against every tenant database (or one)';

    public function handle(Tenancy $tenancy): int
    {
        $tenancy->ensureCentralSchema();
        $query = Tenant::orderBy('name');
        if ($name = $this->argument('name')) {
            $query->where('name', $name);
        }
        $tenants = $query->get();
        if ($name && $tenants->isEmpty()) {
            $this->error("no tenant \"$name\"");

            return 1;
        }
        foreach ($tenants as $tenant) {
            $this->info("tenant {$tenant->name}:");
            $this->line(trim($tenancy->migrate($tenant)));
        }

        return 0;
    }
}
