@extends('layout')
@section('title', 'Tenants')
@section('content')
<p>Tenants of this appliance. Each one is served on its own subdomain
(<code>NAME.{{ $host }}</code>) from its own database <code>tenancy_NAME</code>.</p>
@if ($tenants->isEmpty())
  <p>No tenants yet: <code>applianced exec {{ env('APPLIANCE_INSTANCE', 'NAME') }} -- php artisan tenant:create acme</code></p>
@else
<table>
  <tr><th>tenant</th><th>database</th><th>created</th></tr>
  @foreach ($tenants as $t)
  <tr><td>{{ $t->name }}</td><td><code>{{ $t->database }}</code></td><td>{{ $t->created_at }}</td></tr>
  @endforeach
</table>
@endif
<h2>Scheduler</h2>
@if ($beat)
  <p>{{ $beats }} heartbeats; last at {{ $beat->ran_at }} UTC: {{ $beat->tenants }} tenants, {{ $beat->pending_invoices }} pending invoices.</p>
@else
  <p class="muted">No heartbeat yet (<code>php artisan schedule:run</code> runs <code>facturador:heartbeat</code> every minute).</p>
@endif
<p class="muted">Health as JSON: <a href="/?format=json">/?format=json</a>, <a href="/health">/health</a></p>
@endsection
