"""Airflow-side operators and helpers of the project."""
