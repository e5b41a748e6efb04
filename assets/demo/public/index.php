<?php
// applianced demo page: proves the stack end to end. It reads the provisioned
// credentials from the environment applianced hands php-fpm, talks to MariaDB
// and Redis over their unix sockets, and shows what it found.
declare(strict_types=1);
header('Content-Type: text/html; charset=utf-8');

$out = ['instance' => getenv('APPLIANCE_INSTANCE') ?: '?'];
try {
    $pdo = new PDO(
        'mysql:unix_socket=' . getenv('DB_SOCKET') . ';dbname=' . getenv('DB_DATABASE'),
        getenv('DB_USERNAME'),
        getenv('DB_PASSWORD'),
        [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]
    );
    $pdo->exec('CREATE TABLE IF NOT EXISTS greetings (id INT PRIMARY KEY, message VARCHAR(200) NOT NULL)');
    $pdo->exec("INSERT IGNORE INTO greetings VALUES (1, 'Hello from MariaDB')");
    $out['mariadb'] = $pdo->query('SELECT message FROM greetings WHERE id = 1')->fetchColumn();
    $out['mariadb_version'] = $pdo->query('SELECT VERSION()')->fetchColumn();
} catch (Throwable $e) {
    http_response_code(500);
    $out['mariadb_error'] = $e->getMessage();
}
try {
    $redis = new Redis();
    $redis->connect(getenv('REDIS_HOST'));
    $redis->auth(getenv('REDIS_PASSWORD'));
    $out['redis_visits'] = $redis->incr('demo:visits');
} catch (Throwable $e) {
    http_response_code(500);
    $out['redis_error'] = $e->getMessage();
}
if (($_GET['format'] ?? '') === 'json') {
    header('Content-Type: application/json');
    echo json_encode($out), "\n";
    exit;
}
?><!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>applianced demo</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto">
<h1>applianced demo</h1>
<p>This page was served by php-fpm under applianced, instance <b><?= htmlspecialchars($out['instance']) ?></b>.</p>
<ul>
<?php foreach ($out as $k => $v): ?>
  <li><b><?= htmlspecialchars((string)$k) ?></b>: <?= htmlspecialchars((string)$v) ?></li>
<?php endforeach; ?>
</ul>
</body></html>
