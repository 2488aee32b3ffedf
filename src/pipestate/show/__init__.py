"""Results into words and pictures: plain text, the terminal calendar and windows, the HTML
report and the Prometheus metrics."""
