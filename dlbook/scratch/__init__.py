"""From-scratch implementations the lessons derive, kept here once so that the notebook that
teaches them and the pytest test that proves them run the very same code.

Each function names the equation it implements; notebooks display the source with
:func:`dlbook.display.show_source` before checking it against ``torch.autograd``.
"""
