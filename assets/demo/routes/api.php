<?php

use App\Http\Controllers\InvoiceController;
use Illuminate\Support\Facades\Route;

// No session, no CSRF: for tests and tools. Tenant hosts only.
Route::middleware('tenant')->group(function () {
    Route::get('/invoices', [InvoiceController::class, 'apiIndex']);
    Route::post('/invoices', [InvoiceController::class, 'apiStore']);
    Route::get('/invoices/{id}', [InvoiceController::class, 'apiShow'])->whereNumber('id');
});
