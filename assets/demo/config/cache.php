<?php
return [
    'default' => env('CACHE_DRIVER', 'redis'),

    'stores' => [
        'redis' => ['driver' => 'redis', 'connection' => 'cache', 'lock_connection' => 'default'],
        'array' => ['driver' => 'array', 'serialize' => false],
        'file' => ['driver' => 'file', 'path' => storage_path('framework/cache/data')],
    ],

    'prefix' => env('CACHE_PREFIX', 'cache'), // keys: cache:KEY (Laravel adds the colon)
];
