"""The `llamita` command (typer): one module per command or group of commands; main.py
registers them. Commands parse options and print; the work happens in api/, jobs/, library/,
rag/ and serving/."""
