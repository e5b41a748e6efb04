<?php

namespace App\Models;

use Illuminate\Database\Eloquent\Model;

/** An invoice in the current tenant's database (see Tenancy::use()). */
class Invoice extends Model
{
    protected $connection = 'tenant';

    protected $fillable = ['number', 'customer', 'amount', 'status', 'hash', 'xml_path', 'sent_at'];

    protected $casts = ['amount' => 'decimal:2', 'sent_at' => 'datetime'];

    public const PENDING = 'pending';
    public const SENT = 'sent';

    /** Series F001, numbered by id: F001-00000042. */
    public static function numberFor(int $id): string
    {
        return sprintf('F001-%08d', $id);
    }

    /** The invoice document; its SHA-256 is the "signature". */
    public function toXml(string $tenant): string
    {
        $e = fn ($v) => htmlspecialchars((string) $v, ENT_XML1 | ENT_QUOTES, 'UTF-8');

        return "<Invoice>\n"
            ."  <Tenant>{$e($tenant)}</Tenant>\n"
            ."  <Number>{$e($this->number)}</Number>\n"
            ."  <IssueDate>{$e($this->created_at->toIso8601String())}</IssueDate>\n"
            ."  <Customer>{$e($this->customer)}</Customer>\n"
            ."  <Amount currency=\"PEN\">{$e($this->amount)}</Amount>\n"
            .'</Invoice>';
    }
}
