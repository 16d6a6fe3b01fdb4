"""The apps on top of the library: the chat pipeline, the terminal chat, the chat server and
the chat report. They may import anything below them; nothing in the library imports them."""
