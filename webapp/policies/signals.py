"""Signals other apps listen to, so this app never imports the apps above it."""

from django.dispatch import Signal

# Sent inside the transaction that switches a project's served version, after the switch:
# ``sender`` is ``Project``, kwargs ``project`` (the locked row, already serving it),
# ``version`` (the newly served ``ModelVersion``) and ``previous`` (the one served before, or None).
# A receiver's writes commit or roll back with the switch.
version_served = Signal()
