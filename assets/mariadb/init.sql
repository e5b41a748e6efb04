CREATE DATABASE IF NOT EXISTS `{{ secrets.DB_DATABASE }}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '{{ secrets.DB_USERNAME }}'@'localhost' IDENTIFIED BY '{{ secrets.DB_PASSWORD }}';
ALTER USER '{{ secrets.DB_USERNAME }}'@'localhost' IDENTIFIED BY '{{ secrets.DB_PASSWORD }}';
GRANT ALL PRIVILEGES ON `{{ secrets.DB_DATABASE }}`.* TO '{{ secrets.DB_USERNAME }}'@'localhost';
GRANT ALL PRIVILEGES ON `tenancy\_%`.* TO '{{ secrets.DB_USERNAME }}'@'localhost';
