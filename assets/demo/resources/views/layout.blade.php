<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@yield('title') · Facturador</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222 }
  table { border-collapse: collapse; width: 100% } th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ddd }
  .muted { color: #777 } .ok { color: #075 } .pending { color: #a60 } code { font-size: .9em }
  form { margin: 1rem 0; display: flex; gap: .5rem; flex-wrap: wrap } .flash { background: #efe; padding: .5rem }
  .error { background: #fee; padding: .5rem }
</style>
</head>
<body>
<h1>@yield('title')</h1>
@yield('content')
<p class="muted">Facturador · instance {{ env('APPLIANCE_INSTANCE', config('app.name')) }} · served by applianced</p>
</body>
</html>
