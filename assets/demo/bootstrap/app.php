<?php
// Facturador on Debian's packaged Laravel 8 (php-laravel-framework): there is
// no composer vendor/ dir. The framework and its dependencies come from the
// distro autoloader in /usr/share/php; our own classes get a tiny PSR-4 loader.
require_once '/usr/share/php/Illuminate/autoload.php';

spl_autoload_register(function (string $class): void {
    if (strncmp($class, 'App\\', 4) === 0) {
        $file = __DIR__.'/../app/'.str_replace('\\', '/', substr($class, 4)).'.php';
        if (is_file($file)) {
            require $file;
        }
    }
});

$base = dirname(__DIR__);

// applianced embeds the app with include_dir, which drops empty directories,
// and an operator may wipe storage/: recreate what Laravel expects to write to.
foreach (['bootstrap/cache', 'storage/app', 'storage/framework/cache',
          'storage/framework/sessions', 'storage/framework/views', 'storage/logs'] as $dir) {
    if (! is_dir("$base/$dir")) {
        @mkdir("$base/$dir", 0755, true);
    }
}

$app = new Illuminate\Foundation\Application($base);

$app->singleton(Illuminate\Contracts\Http\Kernel::class, App\Http\Kernel::class);
$app->singleton(Illuminate\Contracts\Console\Kernel::class, App\Console\Kernel::class);
$app->singleton(Illuminate\Contracts\Debug\ExceptionHandler::class, App\Exceptions\Handler::class);

return $app;
