<?php

namespace App\Http\Controllers;

use App\Models\Heartbeat;
use App\Models\Tenant;
use App\Tenancy\Tenancy;
use Illuminate\Http\Request;
use Illuminate\Support\Facades\DB;
use Illuminate\Support\Facades\Redis;
use Throwable;

class CentralController extends Controller
{
    /** Central host: the tenant list; ?format=json is the health view. */
    public function home(Request $request, Tenancy $tenancy)
    {
        if ($tenancy->current() !== null) {
            return app(InvoiceController::class)->index($request);
        }
        if ($request->query('format') === 'json') {
            return $this->health($tenancy);
        }

        return view('central', [
            'tenants' => Tenant::orderBy('name')->get(),
            'beat' => Heartbeat::orderByDesc('id')->first(),
            'beats' => Heartbeat::count(),
            // Tenants are NAME.<this host>; from an IP, show the central domain.
            'host' => filter_var($request->getHost(), FILTER_VALIDATE_IP)
                ? (config('app.central_domains')[0] ?? 'example.com') : $request->getHost(),
        ]);
    }

    /**
     * GET /up (any host): the framework boots and routes; neither MariaDB nor
     * Redis is read, so it answers while they start. The image's php-fpm
     * warm-up asks for it (`warm_up_early`).
     */
    public function up()
    {
        return response('ok', 200, ['Content-Type' => 'text/plain']);
    }

    /**
     * GET /health (any host) and GET /?format=json (central host): proof that
     * PHP read MariaDB and Redis. 200 when both answered, else 503.
     */
    public function health(Tenancy $tenancy)
    {
        $out = ['instance' => env('APPLIANCE_INSTANCE', config('app.name')), 'app' => 'facturador'];
        $ok = true;
        try {
            $out['mariadb_version'] = DB::connection('mysql')->selectOne('SELECT VERSION() AS v')->v;
            $out['mariadb'] = 'ok';
        } catch (Throwable $e) {
            $ok = false;
            $out['mariadb'] = 'error: '.$e->getMessage();
        }
        try {
            $out['redis_visits'] = Redis::connection()->incr('facturador:visits');
            $out['redis'] = 'ok';
        } catch (Throwable $e) {
            $ok = false;
            $out['redis'] = 'error: '.$e->getMessage();
        }
        if ($ok) {
            try {
                $tenancy->ensureCentralSchema();
                $out['tenants'] = Tenant::count();
                $beat = Heartbeat::orderByDesc('id')->first();
                $out['heartbeats'] = Heartbeat::count();
                $out['last_heartbeat'] = $beat?->ran_at?->toIso8601String();
                $out['queue_pending'] = Redis::connection()->llen('queues:default');
            } catch (Throwable $e) {
                $ok = false;
                $out['schema'] = 'error: '.$e->getMessage();
            }
        }
        $out['ok'] = $ok;

        return response()->json($out, $ok ? 200 : 503);
    }
}
