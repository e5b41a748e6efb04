<?php

use Illuminate\Database\Migrations\Migration;
use Illuminate\Database\Schema\Blueprint;
use Illuminate\Support\Facades\Schema;

// Runs in each tenancy_NAME database (tenant:create, tenant:migrate).
return new class extends Migration
{
    public function up()
    {
        Schema::create('invoices', function (Blueprint $table) {
            $table->id();
            $table->string('number', 32)->unique();
            $table->string('customer', 200);
            $table->decimal('amount', 12, 2);
            $table->enum('status', ['pending', 'sent'])->default('pending')->index();
            $table->char('hash', 64)->nullable();
            $table->string('xml_path')->nullable();
            $table->timestamp('sent_at')->nullable();
            $table->timestamps();
        });
    }

    public function down()
    {
        Schema::dropIfExists('invoices');
    }
};
