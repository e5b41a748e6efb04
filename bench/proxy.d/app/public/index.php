<?php
// bench/proxy front controller: every PHP URL of the bench lands here, as in a
// Laravel app (nginx: try_files ... /index.php; Caddy: php_fastcgi; applianced:
// front-controller mode). Bodies are deterministic so the bench can check that
// all three servers answer each URL identically.
$path = parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH);

if ($path === '/') {
    // Workload "PHP hello world".
    header('Content-Type: text/plain; charset=utf-8');
    echo "Hello, world!\n";
    return;
}

if ($path === '/db') {
    // Workload "PHP + one MariaDB query": a fresh PDO connection over the unix
    // socket with the environment applianced gives the pool (as Laravel would).
    $pdo = new PDO(
        'mysql:unix_socket=' . getenv('DB_SOCKET') . ';dbname=' . getenv('DB_DATABASE') . ';charset=utf8mb4',
        getenv('DB_USERNAME'),
        getenv('DB_PASSWORD'),
        [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_EMULATE_PREPARES => false]
    );
    $stmt = $pdo->prepare('SELECT ? + 1 AS answer, DATABASE() = ? AS same_db');
    $stmt->execute([41, getenv('DB_DATABASE')]);
    $row = $stmt->fetch(PDO::FETCH_ASSOC);
    header('Content-Type: text/plain; charset=utf-8');
    echo "db: answer={$row['answer']} same_db={$row['same_db']}\n";
    return;
}

http_response_code(404);
header('Content-Type: text/plain; charset=utf-8');
echo "no route for {$path}\n";
