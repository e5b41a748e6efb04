<?php

use App\Http\Controllers\CentralController;
use App\Http\Controllers\InvoiceController;
use Illuminate\Support\Facades\Route;

// "/" is the tenant list on the central host and the invoice list on a tenant
// host (IdentifyTenant has already chosen, or answered 404).
Route::get('/', [CentralController::class, 'home']);

Route::middleware('tenant')->group(function () {
    Route::get('/invoices', [InvoiceController::class, 'index']);
    Route::post('/invoices', [InvoiceController::class, 'store']);
});
