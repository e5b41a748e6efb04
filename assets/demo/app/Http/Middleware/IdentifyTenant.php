<?php

namespace App\Http\Middleware;

use App\Tenancy\Tenancy;
use Closure;
use Illuminate\Http\Request;

// Host -> tenant: the first label of a non-central host names the tenant.
// Known tenant: its database becomes the "tenant" connection. Unknown: 404
// (except /health and /up, which answer on any host so probes need no tenant).
class IdentifyTenant
{
    public function __construct(private Tenancy $tenancy)
    {
    }

    public function handle(Request $request, Closure $next)
    {
        if ($request->is('health') || $request->is('up')) {
            return $next($request); // /health reports on MariaDB and Redis itself; /up reads neither
        }
        $this->tenancy->ensureCentralSchema();

        $name = $this->tenancy->tenantNameForHost($request->getHost());
        if ($name !== null) {
            $tenant = $this->tenancy->find($name);
            if ($tenant === null) {
                abort(404, "No tenant \"$name\" on this appliance.");
            }
            $this->tenancy->use($tenant);
        }

        return $next($request);
    }
}
