<?php

namespace App\Http\Controllers;

use App\Jobs\SignInvoice;
use App\Models\Invoice;
use App\Tenancy\Tenancy;
use Illuminate\Http\Request;
use Illuminate\Support\Facades\DB;

/** Tenant hosts only (the "tenant" route middleware): pages and JSON API. */
class InvoiceController extends Controller
{
    public function __construct(private Tenancy $tenancy)
    {
    }

    public function index(Request $request)
    {
        return view('tenant.invoices', [
            'tenant' => $this->tenancy->current(),
            'invoices' => Invoice::orderByDesc('id')->limit(100)->get(),
        ]);
    }

    /** The CSRF-protected form. */
    public function store(Request $request)
    {
        $invoice = $this->create($request);

        return redirect('/invoices')->with('status', "Invoice {$invoice->number} queued for signing.");
    }

    public function apiIndex()
    {
        return $this->respond(Invoice::orderByDesc('id')->limit(1000)->get()->map(fn ($i) => $this->json($i)));
    }

    public function apiShow(int $id)
    {
        $invoice = Invoice::find($id) ?? abort(404, "no invoice $id");

        return $this->respond($this->json($invoice));
    }

    public function apiStore(Request $request)
    {
        return $this->respond($this->json($this->create($request)), 201);
    }

    /** Plain JSON: paths unescaped (storage/app/...), UTF-8 as is. */
    private function respond($data, int $status = 200)
    {
        return response()->json($data, $status, [], JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
    }

    /**
     * Insert a pending invoice and queue SignInvoice on the redis connection.
     * `sleep` and `fail` are the test knobs documented on the job.
     */
    private function create(Request $request): Invoice
    {
        $data = $this->validate($request, [
            'customer' => 'required|string|max:200',
            'amount' => 'required|numeric|min:0|max:999999999',
            'sleep' => 'nullable|integer|min:0|max:3600',
            'fail' => 'nullable|integer|min:0|max:100',
        ]);
        $invoice = DB::connection('tenant')->transaction(function () use ($data) {
            $invoice = Invoice::create([
                'number' => 'pending-'.bin2hex(random_bytes(8)),
                'customer' => $data['customer'],
                'amount' => $data['amount'],
                'status' => Invoice::PENDING,
            ]);
            $invoice->update(['number' => Invoice::numberFor($invoice->id)]);

            return $invoice;
        });
        SignInvoice::dispatch($this->tenancy->current()->name, $invoice->id,
            (int) ($data['sleep'] ?? 0), (int) ($data['fail'] ?? 0))->onConnection('redis');

        return $invoice;
    }

    private function json(Invoice $i): array
    {
        return [
            'id' => $i->id,
            'tenant' => $this->tenancy->current()->name,
            'number' => $i->number,
            'customer' => $i->customer,
            'amount' => $i->amount,
            'status' => $i->status,
            'hash' => $i->hash,
            'xml_path' => $i->xml_path,
            'sent_at' => $i->sent_at?->toIso8601String(),
            'created_at' => $i->created_at->toIso8601String(),
        ];
    }
}
