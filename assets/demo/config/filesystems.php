<?php
// Signed invoices are written to storage/app/invoices/TENANT/NUMBER.xml.
return [
    'default' => 'local',
    'disks' => [
        'local' => ['driver' => 'local', 'root' => storage_path('app')],
    ],
];
