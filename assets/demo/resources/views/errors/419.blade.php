@extends('layout')
@section('title', 'Page expired')
@section('content')
<p>The form's CSRF token is missing or expired. Go back, reload and try again.</p>
@endsection
