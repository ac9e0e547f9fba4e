"""placeholder"""
def fill_card(card, **kw):
    pass
