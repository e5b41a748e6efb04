<?php

namespace App\Console\Commands;

use App\Models\Heartbeat as Beat;
use App\Models\Invoice;
use App\Models\Tenant;
use App\Tenancy\Tenancy;
use Illuminate\Console\Command;

class Heartbeat extends Command
{
    protected $signature = 'facturador:heartbeat';

    protected $description = 'Record a heartbeat row (tenants, pending invoices); scheduled every minute';

    public function handle(Tenancy $tenancy): int
    {
        $tenancy->ensureCentralSchema();
        $tenants = Tenant::all();
        $pending = 0;
        foreach ($tenants as $tenant) {
            $tenancy->use($tenant);
            $pending += Invoice::where('status', Invoice::PENDING)->count();
        }
        $beat = Beat::create([
            'ran_at' => now(),
            'tenants' => $tenants->count(),
            'pending_invoices' => $pending,
            'host' => gethostname(),
        ]);
        $this->info("heartbeat {$beat->id}: {$beat->tenants} tenants, {$beat->pending_invoices} pending invoices");

        return 0;
    }
}
