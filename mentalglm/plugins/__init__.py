"""Built-in plugins: they register mentalglm's own tasks, prompt styles and backends through the public hooks."""
