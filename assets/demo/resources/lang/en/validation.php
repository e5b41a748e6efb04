<?php
// The few messages the app's rules can produce (no laravel/lang package here).
return [
    'required' => 'The :attribute field is required.',
    'string' => 'The :attribute must be a string.',
    'numeric' => 'The :attribute must be a number.',
    'integer' => 'The :attribute must be an integer.',
    'min' => ['numeric' => 'The :attribute must be at least :min.', 'string' => 'The :attribute must be at least :min characters.'],
    'max' => ['numeric' => 'The :attribute may not be greater than :max.', 'string' => 'The :attribute may not be greater than :max characters.'],
    'attributes' => [],
];
