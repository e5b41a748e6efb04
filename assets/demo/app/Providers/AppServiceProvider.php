<?php

namespace App\Providers;

use App\Tenancy\Tenancy;
use Illuminate\Support\ServiceProvider;

class AppServiceProvider extends ServiceProvider
{
    public function register()
    {
        // One per request (php-fpm) or per worker process: the current tenant.
        $this->app->singleton(Tenancy::class);
    }
}
