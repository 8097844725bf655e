"""Labelled-set-free history the hybrid-search and window tests share."""

from __future__ import annotations

FILLER = {
    "usb": ("USB drive not recognised", "My memory stick does not show up."),
    "excel": ("Excel file will not open", "The budget workbook gives an error when I open it."),
    "monitor": ("Monitor flickers", "The external screen flickers when docked."),
    "mfa": ("Outlook keeps prompting for password after MFA", "Credentials box pops up every few minutes."),
    "toner": ("Printer toner low warning", "Replace the cartridge in the second floor printer."),
    "vpn": ("VPN disconnects on hotel wifi", "GlobalProtect drops the tunnel."),
    "battery": ("Laptop battery not charging", "Plugged in, not charging, the percentage drops."),
    "camera": ("Teams camera not detected", "No camera found in Teams meetings."),
}
