<?php

namespace App\Providers;

use App\Http\Controllers\CentralController;
use Illuminate\Foundation\Support\Providers\RouteServiceProvider as ServiceProvider;
use Illuminate\Support\Facades\Route;

class RouteServiceProvider extends ServiceProvider
{
    public function boot()
    {
        $this->routes(function () {
            // Outside both groups: no session, cookies or CSRF for a probe.
            Route::get('/health', [CentralController::class, 'health']);
            // Laravel 11's liveness route: the framework booted, no backend read.
            Route::get('/up', [CentralController::class, 'up']);
            Route::prefix('api')->middleware('api')->group(base_path('routes/api.php'));
            Route::middleware('web')->group(base_path('routes/web.php'));
        });
    }
}
