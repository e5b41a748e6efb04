<?php

use Illuminate\Database\Migrations\Migration;
use Illuminate\Database\Schema\Blueprint;
use Illuminate\Support\Facades\Schema;

return new class extends Migration
{
    public function up()
    {
        Schema::create('heartbeats', function (Blueprint $table) {
            $table->id();
            $table->timestamp('ran_at')->index();
            $table->unsignedInteger('tenants');
            $table->unsignedInteger('pending_invoices');
            $table->string('host')->nullable();
        });
    }

    public function down()
    {
        Schema::dropIfExists('heartbeats');
    }
};
