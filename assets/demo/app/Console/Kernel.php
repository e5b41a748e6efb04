<?php

namespace App\Console;

use Illuminate\Console\Scheduling\Schedule;
use Illuminate\Foundation\Console\Kernel as ConsoleKernel;
use Illuminate\Support\Facades\Log;

class Kernel extends ConsoleKernel
{
    // Listed, not discovered: load() would need composer.json to learn the
    // App\ namespace, and there is no composer here.
    protected $commands = [
        Commands\TenantCreate::class,
        Commands\TenantList::class,
        Commands\TenantMigrate::class,
        Commands\Heartbeat::class,
        Commands\InvoicesEnqueue::class,
    ];

    // applianced runs `php artisan schedule:run` every minute.
    protected function schedule(Schedule $schedule)
    {
        // The scheduler sends a command's output to /dev/null; on failure,
        // log it from the scheduler process, whose stderr applianced keeps.
        $schedule->command('facturador:heartbeat')
            ->everyMinute()
            ->withoutOverlapping()
            ->storeOutput()
            ->onFailureWithOutput(function ($output) {
                Log::error('facturador:heartbeat failed', ['output' => (string) $output]);
            });
    }
}
