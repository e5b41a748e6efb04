<?php

namespace App\Tenancy;

use App\Models\Tenant;
use Illuminate\Support\Facades\Artisan;
use Illuminate\Support\Facades\Cache;
use Illuminate\Support\Facades\DB;
use InvalidArgumentException;

// Database-per-tenant: tenant NAME lives in the MariaDB database tenancy_NAME
// (the instance's DB user has ALL on `tenancy\_%`), reached through the
// "tenant" connection whose database is set at runtime by use().
class Tenancy
{
    public const NAME_RULE = '/^[a-z][a-z0-9]{0,29}$/';

    /** Held by whoever runs the central migrations (lazily, or `migrate`). */
    public const MIGRATE_LOCK = 'facturador:migrate';

    private ?Tenant $current = null;

    /** The tenant a host names, or null for a central host. */
    public function tenantNameForHost(string $host): ?string
    {
        $host = strtolower(rtrim($host, '.'));
        if (filter_var($host, FILTER_VALIDATE_IP) || ! str_contains($host, '.')
            || in_array($host, config('app.central_domains'), true)) {
            return null;
        }
        $label = explode('.', $host, 2)[0];

        return $label === 'www' ? null : $label;
    }

    public function find(string $name): ?Tenant
    {
        return preg_match(self::NAME_RULE, $name) ? Tenant::where('name', $name)->first() : null;
    }

    public function current(): ?Tenant
    {
        return $this->current;
    }

    /** Point the "tenant" connection at this tenant's database. */
    public function use(Tenant $tenant): void
    {
        config(['database.connections.tenant.database' => $tenant->database]);
        // Drop a connection to the previous tenant (a queue worker runs jobs of
        // many tenants in one process).
        DB::purge('tenant');
        $this->current = $tenant;
    }

    /**
     * Create tenant NAME: its database, its row, its tables. Safe to repeat:
     * each step is skipped when already done, so a half-failed run can be
     * finished by running it again. Returns [tenant, whether the row is new].
     */
    public function create(string $name): array
    {
        if (! preg_match(self::NAME_RULE, $name) || $name === 'www') {
            throw new InvalidArgumentException(
                "invalid tenant name \"$name\": use 1-30 lowercase letters and digits, starting with a letter (it becomes a host label and the database tenancy_$name); \"www\" is reserved"
            );
        }
        $this->ensureCentralSchema();
        $database = "tenancy_$name";
        // Database before row: a listed tenant always has a database.
        DB::connection('mysql')->statement(
            "CREATE DATABASE IF NOT EXISTS `$database` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        );
        $tenant = Tenant::firstOrCreate(['name' => $name], ['database' => $database]);
        $this->migrate($tenant);

        return [$tenant, $tenant->wasRecentlyCreated];
    }

    /** Run database/migrations/tenant against one tenant; returns the output. */
    public function migrate(Tenant $tenant): string
    {
        $this->use($tenant);
        Artisan::call('migrate', [
            '--database' => 'tenant',
            '--path' => 'database/migrations/tenant',
            '--force' => true,
        ]);

        return Artisan::output();
    }

    /**
     * Central migrations run lazily, so a fresh instance works without a
     * manual `php artisan migrate --force`: the first request or command that
     * needs the central tables runs them, under a Redis lock so concurrent
     * php-fpm workers do not race. A marker named after the migration files
     * makes later calls one Redis GET; adding a migration file changes the
     * marker and runs it. (`php artisan migrate --force` works as usual too.)
     */
    public function ensureCentralSchema(): void
    {
        $files = array_map('basename', glob(database_path('migrations/*.php')));
        $marker = 'facturador:schema:'.sha1(implode(',', $files));
        if (Cache::get($marker)) {
            return;
        }
        Cache::lock(self::MIGRATE_LOCK, 120)->block(60, function () use ($marker) {
            if (! Cache::get($marker)) {
                // The migrator itself, not `Artisan::call('migrate')`: an
                // operator's `php artisan migrate` takes this same lock
                // (AppServiceProvider), so the two never race.
                $migrator = app('migrator');
                if (! $migrator->repositoryExists()) {
                    $migrator->getRepository()->createRepository();
                }
                $migrator->run([database_path('migrations')]);
                Cache::forever($marker, true);
            }
        });
    }
}
