"""The password login backend: Django's ``ModelBackend`` with a cheaper read of the signed-in user.

Every request of a signed-in person reads their user row (``get_user``, from the
session's user id). ``ModelBackend`` builds that read with the ORM each time, which
cost the annotators' hot requests about as much CPU as the rest of their reads
(``bench/annotate_load.py``); here it is one statement written out once, read by a
cursor into ``User.from_db``: the same row, fields and checks (inactive users get
``None``, as there).

Listed in ``AUTHENTICATION_BACKENDS`` before ``django.contrib.auth.backends.ModelBackend``,
which stays listed only so that sessions signed in before this backend existed (they
name that backend) still find it. So that a wrong password is not hashed twice (once by
each), a login this backend refuses stops the chain (``PermissionDenied``, which
``django.contrib.auth.authenticate`` treats as a refusal and reports as a failed
login, as before).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend as DjangoModelBackend
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection


def _user_sql():
    user_model = get_user_model()
    fields = user_model._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    pk = connection.ops.quote_name(user_model._meta.pk.column)
    sql = f"SELECT {columns} FROM {connection.ops.quote_name(user_model._meta.db_table)} WHERE {pk} = %s"
    converters = [
        (i, field, found)
        for i, field in enumerate(fields)
        if (found := connection.ops.get_db_converters(field.get_col(user_model._meta.db_table)) + field.get_db_converters(connection))
    ]
    return user_model, sql, [f.attname for f in fields], converters


class ModelBackend(DjangoModelBackend):
    """``ModelBackend`` (username and password, permissions) whose ``get_user`` is one written-out
    statement; a refused login raises ``PermissionDenied`` so no later backend hashes it again."""

    _read = None  # (user model, statement, field names, converters), built on first use

    def authenticate(self, request, username=None, password=None, **kwargs):
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None and password is not None:
            raise PermissionDenied("Wrong username or password.")
        return user

    def get_user(self, user_id):
        """The active user with primary key ``user_id`` (as the session holds it), or None."""
        if ModelBackend._read is None:
            ModelBackend._read = _user_sql()
        user_model, sql, attnames, converters = ModelBackend._read
        try:
            user_id = user_model._meta.pk.to_python(user_id)
        except (ValidationError, ValueError, TypeError):  # a malformed id in a session: nobody
            return None
        with connection.cursor() as cursor:
            cursor.execute(sql, [user_id])
            row = cursor.fetchone()
        if row is None:
            return None
        values = list(row)
        for i, field, found in converters:
            for converter in found:
                values[i] = converter(values[i], field.get_col(user_model._meta.db_table), connection)
        user = user_model.from_db(connection.alias, attnames, values)
        return user if self.user_can_authenticate(user) else None
