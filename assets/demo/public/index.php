<?php
// Front controller: applianced's front end sends every request that is not an
// existing file under public/ here (nginx's try_files ... /index.php?$args).
define('LARAVEL_START', microtime(true));

$app = require __DIR__.'/../bootstrap/app.php';

$kernel = $app->make(Illuminate\Contracts\Http\Kernel::class);

$response = $kernel->handle(
    $request = Illuminate\Http\Request::capture()
)->send();

$kernel->terminate($request, $response);
