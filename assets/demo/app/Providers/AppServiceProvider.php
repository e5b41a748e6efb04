<?php

namespace App\Providers;

use App\Tenancy\Tenancy;
use Illuminate\Console\Events\CommandFinished;
use Illuminate\Console\Events\CommandStarting;
use Illuminate\Support\Facades\Cache;
use Illuminate\Support\Facades\Event;
use Illuminate\Support\ServiceProvider;

class AppServiceProvider extends ServiceProvider
{
    /** The migrate lock while an operator's `php artisan migrate` runs. */
    private $migrateLock = null;

    public function register()
    {
        // One per request (php-fpm) or per worker process: the current tenant.
        $this->app->singleton(Tenancy::class);
    }

    public function boot()
    {
        if (! $this->app->runningInConsole()) {
            return;
        }
        // `php artisan migrate` waits for (and then holds) the lock the lazy
        // central migration takes, so an operator's migrate never races the
        // first request, a worker or the scheduler creating the same tables.
        Event::listen(CommandStarting::class, function (CommandStarting $e) {
            if ($e->command === 'migrate') {
                $this->migrateLock = Cache::lock(Tenancy::MIGRATE_LOCK, 600);
                $this->migrateLock->block(120);
            }
        });
        Event::listen(CommandFinished::class, function (CommandFinished $e) {
            if ($e->command === 'migrate' && $this->migrateLock) {
                $this->migrateLock->release();
                $this->migrateLock = null;
            }
        });
    }
}
