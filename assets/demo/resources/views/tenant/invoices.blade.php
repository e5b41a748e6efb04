@extends('layout')
@section('title', 'Invoices of '.$tenant->name)
@section('content')
@if (session('status'))<p class="flash">{{ session('status') }}</p>@endif
@if ($errors->any())<p class="error">{{ implode(' ', $errors->all()) }}</p>@endif
<form method="post" action="/invoices">
  @csrf
  <input name="customer" placeholder="customer" value="{{ old('customer') }}" required>
  <input name="amount" placeholder="amount" value="{{ old('amount') }}" required>
  <button>Issue invoice</button>
</form>
<table>
  <tr><th>number</th><th>customer</th><th>amount</th><th>status</th><th>sha-256</th></tr>
  @forelse ($invoices as $i)
  <tr><td>{{ $i->number }}</td><td>{{ $i->customer }}</td><td>{{ $i->amount }}</td>
      <td class="{{ $i->status === 'sent' ? 'ok' : 'pending' }}">{{ $i->status }}</td>
      <td><code>{{ $i->hash ? substr($i->hash, 0, 16).'…' : '' }}</code></td></tr>
  @empty
  <tr><td colspan="5" class="muted">No invoices yet.</td></tr>
  @endforelse
</table>
@endsection
