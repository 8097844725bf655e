"""Forms of the enhancement admin."""

from __future__ import annotations

from django import forms

from enhancements.models import Enhancement


class EnhancementForm(forms.ModelForm):
    """The change form: only the note can be edited, and only while awaiting review."""

    class Meta:
        model = Enhancement
        fields = ["note_html"]
        widgets = {
            "note_html": forms.Textarea(attrs={"rows": 16, "cols": 110, "style": "font-family:monospace"}),
        }
        labels = {"note_html": "Note (HTML)"}
        help_texts = {
            "note_html": "Edit before approving. Saved and posted sanitised: scripts, styles and unknown tags "
            "are removed. The preview shows what SDP will show."
        }
