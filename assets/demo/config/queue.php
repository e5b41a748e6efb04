<?php
// Jobs go to the instance's Redis (list "queues:default"). retry_after must
// exceed the longest job (and the worker's --timeout): a job a killed worker
// was holding becomes visible again after this many seconds. Tests can lower
// it with QUEUE_RETRY_AFTER in [instance.env].
return [
    'default' => env('QUEUE_CONNECTION', 'redis'),

    'connections' => [
        'sync' => ['driver' => 'sync'],
        'redis' => [
            'driver' => 'redis',
            'connection' => 'default',
            'queue' => env('REDIS_QUEUE', 'default'),
            'retry_after' => (int) env('QUEUE_RETRY_AFTER', 90),
            'block_for' => null,
            'after_commit' => true,
        ],
    ],

    // Jobs that exhaust their tries land in the central database.
    'failed' => [
        'driver' => 'database-uuids',
        'database' => env('DB_CONNECTION', 'mysql'),
        'table' => 'failed_jobs',
    ],
];
