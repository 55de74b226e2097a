"""Insight: GPU history, batch timelines, task progress and slot suggestions."""

from flask import Blueprint

bp = Blueprint("insight", __name__)


def register(socketio, slotrun):
    """Start the insight samplers for this app."""
