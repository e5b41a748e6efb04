<?php
// MariaDB is reached over the instance's unix socket (DB_SOCKET; the server
// runs with skip-networking). "mysql" is the central (landlord) database;
// "tenant" is the same server with the database chosen at runtime by
// App\Tenancy\Tenancy::use() (tenancy_NAME).
$mysql = [
    'driver' => 'mysql',
    'host' => env('DB_HOST', 'localhost'),
    'port' => env('DB_PORT', '3306'),
    'unix_socket' => env('DB_SOCKET', ''),
    'database' => env('DB_DATABASE', 'forge'),
    'username' => env('DB_USERNAME', 'forge'),
    'password' => env('DB_PASSWORD', ''),
    'charset' => 'utf8mb4',
    'collation' => 'utf8mb4_unicode_ci',
    'prefix' => '',
    'prefix_indexes' => true,
    'strict' => true,
    'engine' => 'InnoDB',
];

return [
    'default' => env('DB_CONNECTION', 'mysql'),

    'connections' => [
        'mysql' => $mysql,
        'tenant' => array_merge($mysql, ['database' => null]),
    ],

    'migrations' => 'migrations',

    // phpredis over a unix socket: Laravel 8's PhpRedisConnector calls
    // Redis::connect($host, $port, ...) with host and port as configured and no
    // scheme, so host = the socket path and port = 0 is exactly what phpredis
    // wants for a unix socket; then AUTH with the password. The instance's
    // Redis is private, so no key prefix is needed; logical databases keep
    // queues (0), cache (1) and sessions (2) apart for redis-cli inspection.
    'redis' => [
        'client' => env('REDIS_CLIENT', 'phpredis'),
        'options' => [
            'prefix' => env('REDIS_PREFIX', ''),
        ],
        'default' => [
            'host' => env('REDIS_HOST', '127.0.0.1'),
            'password' => env('REDIS_PASSWORD'),
            'port' => (int) env('REDIS_PORT', 6379),
            'database' => 0,
        ],
        'cache' => [
            'host' => env('REDIS_HOST', '127.0.0.1'),
            'password' => env('REDIS_PASSWORD'),
            'port' => (int) env('REDIS_PORT', 6379),
            'database' => 1,
        ],
        'session' => [
            'host' => env('REDIS_HOST', '127.0.0.1'),
            'password' => env('REDIS_PASSWORD'),
            'port' => (int) env('REDIS_PORT', 6379),
            'database' => 2,
        ],
    ],
];
