"""nft commands of what berth's plugins write, whole, for tests that build a
table or an older berth's attachment by hand (the plugins send smaller
transactions; see portmap/layout.py)."""

from __future__ import annotations

import ipaddress

from cni.records import PortMapping
from portmap.layout import (
    BRIDGES_SET,
    DEFAULT_MASQ_BIT,
    add_chain,
    add_elements,
    attachment_add,
    base_layout,
    flush_chain,
    mark_layout,
    masq_elements,
    masq_rules,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from portmap.layout import Cmd


def portmap_add(chain: str, mappings: list[PortMapping], addresses: list[str], *, snat: bool = True,
                masq_all: bool = False, mark_bit: int = DEFAULT_MASQ_BIT, external_setmark: str | None = None,
                note: str | None = None) -> list[Cmd]:
    """A whole portmap ADD on an empty node: the static layout, the marks, the attachment."""
    return (base_layout(external_setmark) + mark_layout(mark_bit)
            + attachment_add(chain, mappings, addresses, snat=snat, masq_all=masq_all,
                             external_setmark=external_setmark, note=note))



def masq_add(chain: str, cidrs: list[str], bridge: str | None, note: str | None = None) -> list[Cmd]:
    """An attachment's ipMasq as berths before masq schema 2 wrote it: a CNI-<hash>
    chain behind @masq-v4/-v6."""
    addresses = [str(ipaddress.ip_interface(c).ip) for c in cidrs]
    subnets = [str(ipaddress.ip_interface(c).network) for c in cidrs]
    cmds = base_layout()
    cmds += [add_chain(chain), flush_chain(chain)]
    cmds += masq_rules(chain, subnets, note=note)
    for name, elems in masq_elements(chain, addresses).items():
        cmds.append(add_elements(name, elems))
    if bridge:
        cmds.append(add_elements(BRIDGES_SET, [bridge]))
    return cmds
