<?php

namespace App\Console\Commands;

use App\Tenancy\Tenancy;
use Illuminate\Console\Command;
use InvalidArgumentException;

class TenantCreate extends Command
{
    protected $signature = 'tenant:create {name : 1-30 of [a-z0-9], starting with a letter}';

    protected $description = 'Create a tenant: its row, its database tenancy_NAME and its tables (safe to repeat)';

    public function handle(Tenancy $tenancy): int
    {
        try {
            [$tenant, $new] = $tenancy->create($this->argument('name'));
        } catch (InvalidArgumentException $e) {
            $this->error($e->getMessage());

            return 2;
        }
        $this->info(($new ? 'created' : 'already exists, migrations checked').": tenant {$tenant->name} (database {$tenant->database})");

        return 0;
    }
}
