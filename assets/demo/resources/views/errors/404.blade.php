@extends('layout')
@section('title', 'Not found')
@section('content')
<p>{{ $exception->getMessage() ?: 'This page does not exist.' }}</p>
@endsection
