<?php

namespace App\Models;

use Illuminate\Database\Eloquent\Model;

/** One run of the scheduled facturador:heartbeat command (central table). */
class Heartbeat extends Model
{
    protected $connection = 'mysql';

    public $timestamps = false;

    protected $fillable = ['ran_at', 'tenants', 'pending_invoices', 'host'];

    protected $casts = ['ran_at' => 'datetime', 'tenants' => 'integer', 'pending_invoices' => 'integer'];
}
