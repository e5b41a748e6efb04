<?php

namespace App\Console\Commands;

use App\Jobs\SignInvoice;
use App\Models\Invoice;
use App\Tenancy\Tenancy;
use Illuminate\Console\Command;
use Illuminate\Support\Facades\DB;

/**
 * Load generator: N pending invoices for one tenant, each with its SignInvoice
 * job on the redis queue, as POST /api/invoices would make them. bench/workers
 * uses it to measure the worker pool; an operator can use it to size one.
 */
class InvoicesEnqueue extends Command
{
    protected $signature = 'invoices:enqueue {tenant} {count=100 : how many invoices}';

    protected $description = 'Create COUNT pending invoices for TENANT and queue their signing jobs';

    public function handle(Tenancy $tenancy): int
    {
        $count = (int) $this->argument('count');
        if ($count < 1 || $count > 1000000) {
            $this->error("count must be 1..1000000, got {$this->argument('count')}");

            return 2;
        }
        $tenant = $tenancy->find((string) $this->argument('tenant'));
        if (! $tenant) {
            $this->error("no tenant \"{$this->argument('tenant')}\" (php artisan tenant:list)");

            return 2;
        }
        $tenancy->use($tenant);
        $ids = [];
        // Rows first, in one transaction per 500: the jobs must find them.
        foreach (array_chunk(range(1, $count), 500) as $chunk) {
            DB::connection('tenant')->transaction(function () use ($chunk, &$ids) {
                foreach ($chunk as $n) {
                    $invoice = Invoice::create([
                        'number' => 'pending-'.bin2hex(random_bytes(8)),
                        'customer' => "Load test customer $n",
                        'amount' => $n % 1000 + 0.5,
                        'status' => Invoice::PENDING,
                    ]);
                    $invoice->update(['number' => Invoice::numberFor($invoice->id)]);
                    $ids[] = $invoice->id;
                }
            });
        }
        foreach ($ids as $id) {
            SignInvoice::dispatch($tenant->name, $id, 0, 0)->onConnection('redis');
        }
        $this->info("queued $count invoices for {$tenant->name}");

        return 0;
    }
}
