<?php

namespace App\Jobs;

use App\Models\Invoice;
use App\Tenancy\Tenancy;
use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Foundation\Bus\Dispatchable;
use Illuminate\Queue\InteractsWithQueue;
use Illuminate\Support\Facades\Log;
use RuntimeException;

/**
 * "Signs" an invoice: writes storage/app/invoices/TENANT/NUMBER.xml with the
 * invoice XML and its SHA-256, then marks the invoice sent.
 *
 * The payload holds the tenant's name and the invoice id, not the model: a
 * serialized model would come back on the "tenant" connection pointing at
 * whichever tenant the worker used last.
 *
 * Test knobs (from POST /api/invoices): `sleep` seconds of work before signing
 * (kill or stop a worker mid-job), and `fail` = how many attempts throw before
 * one succeeds (retries, failed_jobs). Retries and the stop are the worker's:
 * `queue:work --tries=N --timeout=S` (sleep must stay under --timeout, 60 s by
 * default, and under QUEUE_RETRY_AFTER).
 */
class SignInvoice implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable;

    public function __construct(
        public string $tenant,
        public int $invoiceId,
        public int $sleep = 0,
        public int $failAttempts = 0,
    ) {
    }

    public function handle(Tenancy $tenancy): void
    {
        $tenant = $tenancy->find($this->tenant);
        if ($tenant === null) {
            $this->fail(new RuntimeException("tenant {$this->tenant} no longer exists"));

            return;
        }
        $tenancy->use($tenant);
        $invoice = Invoice::find($this->invoiceId);
        if ($invoice === null || $invoice->status === Invoice::SENT) {
            // Deleted, or signed by an attempt that died before acknowledging.
            return;
        }
        $context = ['tenant' => $this->tenant, 'invoice' => $invoice->number,
            'attempt' => $this->attempts(), 'pid' => getmypid()];
        Log::info('SignInvoice: start', $context + ['sleep' => $this->sleep]);

        // Sleep in slices: a signal (SIGTERM for a graceful stop) interrupts
        // sleep(), and the job must still take its full time.
        $until = microtime(true) + $this->sleep;
        while (($left = $until - microtime(true)) > 0) {
            usleep((int) (min($left, 0.25) * 1e6));
        }
        if ($this->attempts() <= $this->failAttempts) {
            throw new RuntimeException("SignInvoice: attempt {$this->attempts()} of {$invoice->number} fails on purpose (fail={$this->failAttempts})");
        }

        $xml = $invoice->toXml($this->tenant);
        $hash = hash('sha256', $xml);
        $relative = "invoices/{$this->tenant}/{$invoice->number}.xml";
        $path = storage_path("app/$relative");
        @mkdir(dirname($path), 0755, true);
        $document = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<SignedInvoice>\n$xml\n"
            ."<Digest algorithm=\"sha256\">$hash</Digest>\n</SignedInvoice>\n";
        // Write then rename: a worker killed mid-write leaves no torn file.
        if (file_put_contents("$path.tmp", $document) === false || ! rename("$path.tmp", $path)) {
            throw new RuntimeException("cannot write $path");
        }

        $invoice->update([
            'status' => Invoice::SENT,
            'hash' => $hash,
            'xml_path' => "storage/app/$relative",
            'sent_at' => now(),
        ]);
        Log::info('SignInvoice: sent', $context + ['hash' => $hash]);
    }
}
