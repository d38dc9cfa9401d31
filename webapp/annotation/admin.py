from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.shortcuts import redirect

from webapp.errors import ApplicationError

from . import services
from .models import Comparison, Completion, Feedback, GoldItem, Lease, Pair, Prompt, Rating, RatingRevision


class ReadOnlyAdmin(admin.ModelAdmin):
    """Judgments are the record training reads: they change only through the annotate
    page (rate, undo), which keeps ``Completion.n_ratings`` and the revision history in
    step. The admin shows them and refuses to add, change or delete them."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    """``Prompt.clean`` turns a prompt the project has already into a form error; two people
    saving the same new prompt at the same moment both pass it, and the database's unique
    (project, text_sha256) refuses the second: that one gets a message, not a 500."""

    list_display = ["id", "project", "source", "held_out", "created_at"]
    list_filter = ["project", "held_out"]
    search_fields = ["text", "source"]

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except IntegrityError:  # the admin's own transaction has rolled back: nothing was stored
            messages.error(request, "This project has this prompt already (saved a moment ago); nothing was changed.")
            return redirect(request.get_full_path())


@admin.register(Completion)
class CompletionAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "model_version", "source", "response_id", "finished", "created_at"]
    list_filter = ["project", "source", "finished"]
    search_fields = ["response_id"]
    raw_id_fields = ["prompt", "model_version", "api_token"]


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdmin):
    list_display = ["id", "completion", "kind", "score", "thumbs_up", "api_token", "created_at", "withdrawn_at"]
    list_filter = ["kind", ("withdrawn_at", admin.EmptyFieldListFilter)]
    search_fields = ["comment", "completion__response_id"]
    raw_id_fields = ["completion", "other", "rating"]


@admin.register(Rating)
class RatingAdmin(ReadOnlyAdmin):
    list_display = ["id", "completion", "annotator", "source", "score", "thumbs_up", "comparison", "created_at"]
    list_filter = ["source", "annotator"]
    raw_id_fields = ["completion"]


@admin.register(Lease)
class LeaseAdmin(admin.ModelAdmin):
    list_display = ["id", "completion", "annotator", "slot", "expires_at", "fulfilled"]


@admin.register(Pair)
class PairAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "completion_a", "completion_b", "created_at"]
    list_filter = ["project"]
    raw_id_fields = ["completion_a", "completion_b"]


@admin.register(Comparison)
class ComparisonAdmin(ReadOnlyAdmin):
    list_display = ["id", "pair", "annotator", "choice", "a_on_left", "created_at"]
    list_filter = ["choice", "annotator"]
    raw_id_fields = ["pair"]


@admin.register(RatingRevision)
class RatingRevisionAdmin(ReadOnlyAdmin):
    list_display = ["id", "completion", "pair", "annotator", "action", "score", "thumbs_up", "choice", "revised_at"]
    list_filter = ["action", "annotator"]
    raw_id_fields = ["completion", "pair"]


@admin.register(GoldItem)
class GoldItemAdmin(admin.ModelAdmin):
    """Gold items are added and their answers changed through ``services.gold_item_set``, which
    checks the answer against the item and writes the change to the project's audit log."""

    class Form(forms.ModelForm):
        def clean(self):
            data = super().clean()
            if data.get("completion") is not None and "answer" in data:
                try:
                    data["answer"] = services.gold_answer_check(completion=data["completion"], answer=data["answer"])
                except ApplicationError as exc:
                    raise ValidationError({"answer": exc.message}) from exc
            return data

    form = Form
    list_display = ["id", "project", "completion", "answer", "updated_at"]
    list_filter = ["project"]
    raw_id_fields = ["completion"]
    fields = ["completion", "answer", "note"]

    def save_model(self, request, obj, form, change):
        saved = services.gold_item_set(completion=obj.completion, answer=obj.answer, note=obj.note, actor=request.user)
        obj.pk, obj.project_id = saved.pk, saved.project_id
