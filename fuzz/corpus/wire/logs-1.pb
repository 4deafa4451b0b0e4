
2


service.name
web	*
GET /2
k
v