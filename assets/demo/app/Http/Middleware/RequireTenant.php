<?php

namespace App\Http\Middleware;

use App\Tenancy\Tenancy;
use Closure;
use Illuminate\Http\Request;

// Invoice routes exist only on a tenant host; on the central host they 404.
class RequireTenant
{
    public function handle(Request $request, Closure $next)
    {
        if (app(Tenancy::class)->current() === null) {
            abort(404, 'Invoices live on a tenant host, e.g. acme.'.$request->getHost());
        }

        return $next($request);
    }
}
