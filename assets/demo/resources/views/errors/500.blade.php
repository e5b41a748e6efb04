@extends('layout')
@section('title', 'Server error')
@section('content')
<p>Something went wrong; the details are in the php-fpm log (<code>applianced logs INSTANCE/php-fpm</code>).</p>
@endsection
