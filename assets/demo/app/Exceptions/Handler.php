<?php

namespace App\Exceptions;

use Illuminate\Foundation\Exceptions\Handler as ExceptionHandler;
use Throwable;

class Handler extends ExceptionHandler
{
    protected $dontFlash = ['password'];

    // /api/* and /health answer JSON errors even without an Accept header
    // (curl -d ... sends none); pages get resources/views/errors/*.blade.php.
    protected function shouldReturnJson($request, Throwable $e)
    {
        return $request->is('api/*', 'health') || parent::shouldReturnJson($request, $e);
    }
}
