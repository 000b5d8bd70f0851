"""Stand-ins for the Qt widgets of the module panels: named and typed after the module's .ui file
by the tests, recording what the code sets (no Qt needed)."""
from __future__ import annotations

from types import SimpleNamespace


class FakeWidget:
    """Records what the code sets; answers the few getters the widget base uses."""

    def __init__(self, cls: str) -> None:
        self.cls, self.text, self.toolTip, self.enabled = cls, "", "", True
        self.value, self.format, self.lines, self.items, self.currentIndex = 0, "", [], [], -1
        self.currentPath = ""
        self.currentRow = -1  # QListWidget's selected row

    def className(self):
        return self.cls

    def setValue(self, v):
        self.value = v

    def setFormat(self, f):
        self.format = f

    def appendPlainText(self, t):
        self.lines.append(t)

    def clear(self):
        self.lines, self.items = [], []

    def addItem(self, label, data=None):
        self.items.append((label, data))

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def itemData(self, i):
        return self.items[i][1]

    @property
    def count(self):
        return len(self.items)

    def blockSignals(self, flag):
        return False

    def connect(self, *args):
        pass

    # QComboBox's item view / model, as far as the model selector uses them
    def itemText(self, i):
        return self.items[i][0]

    def view(self):
        return self

    def model(self):
        return self

    def setRowHidden(self, i, hidden):
        self.hidden = {**getattr(self, "hidden", {}), i: hidden}

    def item(self, i):
        widget = self

        class Item:
            def setEnabled(self, flag):
                widget.itemEnabled = {**getattr(widget, "itemEnabled", {}), i: flag}

        return Item()

    def shownTexts(self):
        hidden = getattr(self, "hidden", {})
        return [t for i, (t, _) in enumerate(self.items) if not hidden.get(i, False)]


class FakeParameters(SimpleNamespace):
    """The parameter-node wrapper's attribute interface (``allParameters`` lists the fields)."""

    @property
    def allParameters(self):
        return dict(vars(self))
