<?php

namespace App\Models;

use Illuminate\Database\Eloquent\Model;

/** A row of the central `tenants` table. */
class Tenant extends Model
{
    protected $connection = 'mysql';

    protected $fillable = ['name', 'database'];
}
